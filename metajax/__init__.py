"""metajax: rational metareasoning (RaM) and ROI-Reasoning in JAX."""

import os

# transformers (tokenizers and configs only here) advises at import that "PyTorch was not found";
# metajax never needs PyTorch, so that advice only worries a user. Errors and warnings still show.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
