-- A queue's rate limit (botrix limit), read, set or lifted, with the window's count as of now.
--
-- KEYS[1] rate limit hash   KEYS[2] its log of recent claims (_rate.lua)
-- ARGV[1] 'get', 'set' or 'clear'   ARGV[2] max   ARGV[3] per_ms (both for 'set')
-- Returns {max, per_ms, used}, or an empty array when the queue has no limit. A garbled limit
-- fails 'get' and 'set' (it is named, not overwritten); 'clear' deletes it, which repairs it.
--- @include "_event.lua"
--- @include "_rate.lua"

local rate, log, action = KEYS[1], KEYS[2], ARGV[1]
if action == 'clear' then
  redis.call('DEL', rate, log)
  return {}
end
local now = now_ms()
local limit = rate_load(rate, log, now)
if action == 'set' then
  -- The window's count is kept: a higher limit lets more through at once, a lower one holds
  -- claims until enough of the earlier ones have left the window. Without a limit, nothing
  -- read the log or `used` (a claim ignores them), so whatever is there is dropped, rather than
  -- checked after the HSET below, which a failure would not undo.
  if not limit then
    redis.call('DEL', rate, log)
  end
  redis.call('HSET', rate, 'max', ARGV[2], 'per_ms', ARGV[3])
  limit = rate_load(rate, log, now)
end
if not limit then
  return {}
end
return {limit.max, limit.per, limit.used}
