-- Argo CD health of an analysis.dev/v1alpha1 AnalysisBatch.
--
-- Reads what the operator writes (operator/src/analysis_operator/status.py):
-- status.observedGeneration, status.phase and the conditions Ready,
-- Reconciling, Stalled, Complete, Failed, Suspended, BudgetExceeded and
-- WaitingForApproval, each with a CamelCase reason and a message.
--
--   Healthy      the batch is Complete
--   Degraded     it Failed, or it is Stalled (a broken reference, a plan that
--                does not compile, its budget used up, its provider refusing for
--                quota until a probe passes): reason and message say why
--   Suspended    it waits for a person to edit its spec, with nothing else to
--                do: spec.suspend is true and it has not finished, or items are
--                held at an approval stage and every other stage is idle
--   Progressing  everything else: no status yet, a status of an older
--                generation (whatever that status says), pending, running
--                (items held at a gate while other stages still work, too), or
--                waiting for Redis to come back (Reconciling=True)
--
-- It agrees with kstatus (what Flux reads; tests/integration/test_kstatus.py):
-- Healthy and Suspended are kstatus's Current, Degraded its Failed and
-- Progressing its InProgress, except for a batch without any status (kstatus
-- reads Current). Argo CD itself reports a batch being deleted as Progressing
-- ("Pending deletion") without running this script.
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

-- A condition's truth; the phase stands in when the condition is missing.
local function holds(status, kind, phase)
  local c = condition(status, kind)
  if c ~= nil then
    return c.status == "True", c
  end
  return phase ~= nil and status.phase == phase, nil
end

-- "Reason: message", or whichever of the two is there, or the fallback.
local function explain(c, fallback)
  if c == nil then
    return fallback
  end
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

local function assess(batch)
  local status = batch.status
  if type(status) ~= "table" or status.phase == nil then
    return verdict("Progressing", "Waiting for the operator to report on the batch")
  end

  local generation = batch.metadata ~= nil and batch.metadata.generation or nil
  local observed = status.observedGeneration
  if generation ~= nil and observed ~= generation then
    local message = "Waiting for the operator to observe generation " .. whole(generation)
    if observed ~= nil then
      message = message .. " (the status describes generation " .. whole(observed) .. ")"
    end
    return verdict("Progressing", message)
  end

  local progress = status.progress or "0/0"

  local complete, completed = holds(status, "Complete", "Complete")
  if complete then
    local message = "Complete: " .. progress .. " items done"
    if completed ~= nil and completed.message ~= nil and completed.message ~= "" then
      message = "Complete: " .. completed.message
    end
    return verdict("Healthy", message)
  end

  local failed, failure = holds(status, "Failed", "Failed")
  if failed then
    return verdict("Degraded", explain(failure, "Failed"))
  end

  local stalled, stall = holds(status, "Stalled", nil)
  if stalled then
    return verdict("Degraded", explain(stall, "Stalled"))
  end

  local over, budget = holds(status, "BudgetExceeded", nil)
  if over then
    return verdict("Degraded", explain(budget, "BudgetExceeded"))
  end

  -- Work the operator can still do (Redis to wait for, too) comes before a settled state.
  local reconciling, work = holds(status, "Reconciling", nil)
  if reconciling then
    return verdict("Progressing", explain(work, status.phase))
  end

  local suspended, suspension = holds(status, "Suspended", "Suspended")
  if suspended or (batch.spec ~= nil and batch.spec.suspend == true) then
    return verdict("Suspended", explain(suspension, "spec.suspend is true") .. " (" .. progress .. " items done)")
  end

  -- Only when nothing else moves: items held at a gate while another stage works is Running, Reconciling=True.
  local waiting, gate = holds(status, "WaitingForApproval", "WaitingForApproval")
  if waiting and status.phase == "WaitingForApproval" then
    return verdict("Suspended", explain(gate, "WaitingForApproval") .. " (" .. progress .. " items done)")
  end
  local message = status.phase .. ": " .. progress .. " items done"
  if status.message ~= nil and status.message ~= "" then
    message = status.phase .. ": " .. status.message
  end
  return verdict("Progressing", message)
end

return assess(obj)
