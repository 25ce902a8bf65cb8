"""What the operator and the workers share, and nothing else.

The API models (``analysis_core.api``), and later the compiled pipeline plan,
the Redis protocol, the error taxonomy and token and cost accounting. This
package imports neither Kopf, a Kubernetes client nor a provider SDK, so the
worker image does not carry operator dependencies (checked by import-linter).
"""

__version__ = "0.1.0"
