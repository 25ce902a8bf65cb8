-- Argo CD health of an analysis.dev/v1alpha1 AnalysisProvider (a provider
-- account shared by batches in many namespaces).
--
-- Reads what the operator's allocator writes (accounts.provider_status in
-- operator/src/analysis_operator/accounts.py): status.observedGeneration, the
-- figures of the account's window and the conditions Ready, Paused and
-- QuotaExhausted, each with a CamelCase reason and a message.
--
--   Healthy      the allocator serves the account: what its last window used
--   Degraded     the provider refuses the account (or a model on it) for quota
--                or billing: no batch on it gets calls but the probes until
--                one passes; the message is the provider's
--   Progressing  no status yet, a status of an older generation, not Ready,
--                or the provider asked the account to wait (a 429's
--                retry-after, over in seconds)
--
-- Flux (kstatus) reads Ready only, so it reports an account refused for quota
-- as Current; the batches on it say ProviderQuotaExhausted either way.
--
-- whole(), condition() and explain() are the AnalysisBatch check's: Argo CD
-- runs each check alone, from its own argocd-cm key, so they cannot share a
-- module.
--
-- Argo CD runs this with gopher-lua (Lua 5.1), where every number is a float
-- and string.format hands its arguments to Go's fmt: so no string.format, and
-- numbers are printed through whole(). Tested under lua5.4 with integers and
-- with floats (tests/unit/test_argocd_health.py).

local function whole(n)
  return (string.gsub(tostring(n), "%.0$", ""))
end

local function condition(status, kind)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

-- "Reason: message", or whichever of the two is there, or the fallback.
local function explain(c, fallback)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

local function verdict(health, message)
  return {status = health, message = message}
end

local function assess(account)
  local status = account.status
  if type(status) ~= "table" or condition(status, "Ready") == nil then
    return verdict("Progressing", "Waiting for the operator to report on the account")
  end

  local generation = account.metadata ~= nil and account.metadata.generation or nil
  local observed = status.observedGeneration
  if generation ~= nil and observed ~= generation then
    local message = "Waiting for the operator to observe generation " .. whole(generation)
    if observed ~= nil then
      message = message .. " (the status describes generation " .. whole(observed) .. ")"
    end
    return verdict("Progressing", message)
  end

  local refused = condition(status, "QuotaExhausted")
  if refused ~= nil and refused.status == "True" then
    return verdict("Degraded", explain(refused, "QuotaExhausted"))
  end

  local ready = condition(status, "Ready")
  if ready.status ~= "True" then
    return verdict("Progressing", explain(ready, "not Ready"))
  end

  local paused = condition(status, "Paused")
  if paused ~= nil and paused.status == "True" then
    return verdict("Progressing", explain(paused, "Paused"))
  end

  local message = "Serving " .. whole(status.batches or 0) .. " batches"
  if status.requestsSummary ~= nil and status.windowSeconds ~= nil then
    message = message .. ": " .. status.requestsSummary .. " requests in the last " .. whole(status.windowSeconds) .. "s"
  end
  return verdict("Healthy", message .. ", " .. whole(status.inFlight or 0) .. " calls in flight")
end

return assess(obj)
