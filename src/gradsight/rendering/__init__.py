"""Pictures and files: figures of maps and fields, and writing them to disk atomically."""
