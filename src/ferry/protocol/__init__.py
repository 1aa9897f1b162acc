"""Wire formats: each decodes to a runtime batch and encodes predictions back."""
