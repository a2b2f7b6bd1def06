"""The sans-I/O protocol core: plain state machines driven by bytes and times passed in, no I/O."""
