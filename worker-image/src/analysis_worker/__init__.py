"""The worker: claims items of one stage from Redis, calls the provider, records results.

It never imports the operator or Kopf (checked by import-linter): one image
serves every stage, configured by environment only.
"""
