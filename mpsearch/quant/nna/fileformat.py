"""Names of the integer export's file format, shared by the exporter and the torch-free executor."""

EXPORT_TYPE = "mpsearch.NNAIntegerModel"
EXPORT_VERSION = 1
HEADER_KEY = "__header__"
