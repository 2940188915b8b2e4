-- Record a running job's progress and announce it, only while this attempt holds the job.
--
-- KEYS[1] the job's record hash   KEYS[2] events channel
-- ARGV[1] job id   ARGV[2] delivery   ARGV[3] progress (JSON)   ARGV[4] queue name
-- ARGV[5] worker id
-- Returns 1 when recorded, 0 when the attempt no longer holds the job (nothing is written).
--- @include "_event.lua"

local state = record_fields(KEYS[1], 'status', 'delivery', 'worker') or {}
if state[1] ~= 'running' or state[2] ~= ARGV[2] or state[3] ~= ARGV[5] then
  return 0
end
redis.call('HSET', KEYS[1], 'progress', ARGV[3])
local now = now_ms()
-- The progress value is spliced in as raw JSON so it is published exactly as the handler gave it.
local event = cjson.encode({event = 'progress', job_id = ARGV[1], queue = ARGV[4], ts = now})
redis.call('PUBLISH', KEYS[2], string.sub(event, 1, -2) .. ',"progress":' .. ARGV[3] .. '}')
return 1
