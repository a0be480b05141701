"""Pure computational core of fleetscore: arrays in, arrays out, no I/O."""
