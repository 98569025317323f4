"""Span limits (OTel SDK style) and id checks for the `limits` stage: settings, the check (C scanner with the
pure-Python reference beside it) and the fix applied on the rare request that needs one."""
