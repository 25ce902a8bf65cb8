"""Provider clients: one module per provider, all behind ``base.Provider``.

``base`` holds the protocol and the request/response types; ``anthropic_provider``,
``openai_provider`` and ``offline`` implement it; ``build()`` picks one from a
stage's provider settings. Every provider raises only
``analysis_core.errors.ProviderError`` (its SDK's exception chained), so the
worker loop deals in one error vocabulary.
"""

from __future__ import annotations

from analysis_core import plan
from analysis_core.api import v1alpha1
from analysis_worker.providers import base


def build(
    settings: plan.ProviderPlan,
    api_key: str | None,
    *,
    strict_validation: bool = False,
    egress: base.Egress | None = None,
) -> base.Provider:
    """The provider for a stage's settings. SDK modules are imported only when used.

    ``egress``: a provider account's proxy and extra CA certificates, for a gateway.
    """
    if settings.type is v1alpha1.ProviderType.OFFLINE:
        from analysis_worker.providers import offline

        if settings.offline is None:
            raise ValueError("an offline provider's plan carries its options (plan.compile_plan sets them)")
        return offline.OfflineProvider(settings.offline, model=settings.model)
    if not api_key:
        raise ValueError(f"a {settings.type} provider needs an API key")
    if settings.type is v1alpha1.ProviderType.ANTHROPIC:
        from analysis_worker.providers import anthropic_provider

        return anthropic_provider.AnthropicProvider(
            model=settings.model,
            api_key=api_key,
            base_url=settings.base_url,
            strict_validation=strict_validation,
            egress=egress,
        )
    from analysis_worker.providers import openai_provider

    return openai_provider.OpenAIProvider(
        model=settings.model,
        api_key=api_key,
        base_url=settings.base_url,
        strict_validation=strict_validation,
        egress=egress,
    )
