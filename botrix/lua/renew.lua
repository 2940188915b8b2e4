-- Extend the leases a worker still holds.
--
-- KEYS[1] active zset
-- ARGV[1] lease length ms   ARGV[2] job record key prefix   ARGV[3] worker id
-- then two entries a job: id, delivery
-- Returns a flat array, two entries a lost lease (recovered, or claimed again): id, delivery.
--- @include "_event.lua"

local deadline = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local state = record_fields(ARGV[2] .. id, 'status', 'delivery', 'worker') or {}
  if state[1] == 'running' and state[2] == ARGV[i + 1] and state[3] == ARGV[3] then
    -- The record alone decides: every script changes it with the lease in one step. Without
    -- XX, a lease something deleted (the active set replaced, then repaired) is put back;
    -- reported lost instead, the job would stay 'running' with nothing to ever recover it.
    redis.call('ZADD', KEYS[1], deadline, id)
  else
    lost[#lost + 1] = id
    lost[#lost + 1] = ARGV[i + 1]
  end
end
return lost
