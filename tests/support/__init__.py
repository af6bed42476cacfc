"""What test modules share, so that none imports another: the callback receiver, the DAPI as the
tests play it, Ray Serve on this machine, real CPU engines, waits, and the stand-in engines (the
one fake engine of the serve layer, and the fault-injecting engines of the unit layer)."""
