-- Argo CD health of an mqtt-operator.io object, the same for all six kinds: read from
-- metadata.deletionTimestamp, status.observedGeneration and the conditions ReconciliationPaused,
-- Stalled, Ready and Reconciling that the operator writes. Argo CD runs it without Lua's string
-- library, so this uses only the base and table libraries.

-- Ready=False reasons that are what the spec asks for (a stopped or paused integration, a
-- disabled trigger): nothing is wrong and nothing is in progress.
local at_rest = {Stopped = true, Paused = true, Disabled = true}

local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

-- What a condition says: its message, else its reason.
local function says(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return c.reason or ""
end

local function health(status, message)
  return {status = status, message = message}
end

if obj.metadata.deletionTimestamp ~= nil then
  return health("Progressing", "deleting")
end

local paused = condition("ReconciliationPaused")
if is_true(paused) then
  return health("Suspended", says(paused))
end

local generation = obj.metadata.generation
local observed = obj.status ~= nil and obj.status.observedGeneration or nil
if observed == nil then
  return health("Progressing", "waiting for the operator to observe the object")
end
if generation ~= nil and observed < generation then
  return health("Progressing", "waiting for the operator to observe generation " .. generation
    .. " (observed: " .. observed .. ")")
end

local stalled = condition("Stalled")
if is_true(stalled) then
  return health("Degraded", says(stalled))
end

local ready = condition("Ready")
if is_true(ready) then
  return health("Healthy", says(ready))
end

local reconciling = condition("Reconciling")
if is_true(reconciling) then
  return health("Progressing", says(reconciling))
end

if ready == nil then
  return health("Progressing", "waiting for the operator to report Ready")
end
if ready.status ~= "False" then
  return health("Progressing", says(ready))
end
if at_rest[ready.reason] then
  return health("Suspended", says(ready))
end
return health("Degraded", says(ready))
