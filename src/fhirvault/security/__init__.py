"""Security: OAuth2 clients, access tokens, SMART scopes and the access policy."""
