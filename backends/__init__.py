"""One module per backend, and the code that runs inside the launched processes."""
