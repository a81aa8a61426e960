"""The runner's steps, one module each: initialize, dump, upload, completion, retention."""
