"""Pure rules of credit metering: no I/O, no clock reads; everything is passed in."""
