"""The HTTP edge: parse the request, call a use case, render the answer."""
