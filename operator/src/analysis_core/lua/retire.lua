-- Retire worker pods of a stage to scale it in: each pod named that holds no
-- entry of the stage's stream (nothing in the group's PEL under its consumer
-- name) joins the stage's retired set, and from then on the worker's
-- claim.lua and reclaim.lua give it nothing. Checked and marked in one step,
-- so a pod either claimed first (and is not retired) or is retired first (and
-- claims nothing): deleting a retired pod kills no call.
--
-- KEYS[1] stage stream  KEYS[2] the stage's retired consumers (a set)
-- ARGV[1] group  ARGV[2..] pod names (consumer names)
-- Returns the pods of ARGV that are retired now, including those retired before.
local stream, group = KEYS[1], ARGV[1]
local out = {}
for i = 2, #ARGV do
  local pod = ARGV[i]
  if redis.call('SISMEMBER', KEYS[2], pod) == 1 then
    out[#out + 1] = pod
  else
    local ok, holding = pcall(redis.call, 'XPENDING', stream, group, '-', '+', 1, pod)
    if ok and #holding == 0 then
      redis.call('SADD', KEYS[2], pod)
      out[#out + 1] = pod
    end
  end
end
return out
