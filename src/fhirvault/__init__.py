"""fhirvault: a FHIR R4 server built first of all for binary data."""

__version__ = "0.1.0"
