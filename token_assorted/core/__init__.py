"""The ground floor: errors, safe file I/O, the typed-config machinery, devices, output folders and where a
model's files are. Imports no stage of the pipeline."""
