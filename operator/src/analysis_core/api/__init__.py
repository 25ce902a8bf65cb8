"""The public API of analysis-operator: the AnalysisBatch and AnalysisProvider resources.

``v1alpha1`` holds the pydantic models of the served version; ``crd`` turns
them into the CustomResourceDefinitions committed under ``crds/``. The names
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

# A shared provider account: cluster-scoped, owned by the platform admin.
PROVIDER_KIND = "AnalysisProvider"
PROVIDER_PLURAL = "analysisproviders"
PROVIDER_SINGULAR = "analysisprovider"
PROVIDER_SHORT_NAMES = ("ap",)
