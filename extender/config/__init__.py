"""The powercap config: one module per larger section, the file's model, and its loader."""
