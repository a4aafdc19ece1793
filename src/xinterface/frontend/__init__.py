"""The command line's helpers: option types, guest images, output targets, the serial console
and error reports. ``xinterface.cli`` stays a thin front end over them; each module here is
imported only by the command that needs it."""
