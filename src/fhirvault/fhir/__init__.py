"""FHIR R4 knowledge: resource rules, OperationOutcome, Bundle, search parameters; imports nothing of ours."""
