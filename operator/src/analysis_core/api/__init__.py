"""The public API of analysis-operator: the AnalysisBatch resource.

``v1alpha1`` holds the pydantic models of the served version; ``crd`` turns
them into the CustomResourceDefinition committed under ``crds/``. The names
below identify the resource on the wire and are the only place they are
spelled.
"""

GROUP = "analysis.dev"
VERSION = "v1alpha1"
KIND = "AnalysisBatch"
PLURAL = "analysisbatches"
SINGULAR = "analysisbatch"
SHORT_NAMES = ("ab",)
CATEGORIES = ("analysis",)
