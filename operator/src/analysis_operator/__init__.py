"""The Kopf operator that reconciles AnalysisBatch resources.

Importing this package registers no handlers: they are registered only when
Kopf loads ``analysis_operator.handlers`` (``analysis-operator`` does that), so
the pure modules can be imported and tested without side effects.
"""
