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
  if state[1] == 'running' and state[2] == ARGV[i + 1] and state[3] == ARGV[3]
      and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
    lost[#lost + 1] = ARGV[i + 1]
  end
end
return lost
