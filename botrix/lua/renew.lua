-- Extend the leases a worker still holds.
--
-- KEYS[1] active zset   KEYS[2] events channel (never a key: see _event.lua, "slot in migration")
-- ARGV[1] lease length ms   ARGV[2] job record key prefix   ARGV[3] worker id
-- then two entries a job: id, delivery
-- Returns a flat array, three entries a lost lease (recovered, claimed again, or cancelled): id,
-- delivery, and 1 if the job was cancelled (botrix cancel), else 0.
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
    -- Cancelled while this delivery ran: the record still names its worker and delivery.
    local cancelled = state[1] == 'cancelled' and state[2] == ARGV[i + 1] and state[3] == ARGV[3]
    lost[#lost + 1] = cancelled and 1 or 0
  end
end
return lost
