-- rate_room / rate_spend: a queue's rate limit (`botrix limit`): at most `max` claims in any
-- window of `per_ms`, counted across every worker, because the count lives beside the queue.
-- Pulled into scripts by `--- @include "_rate.lua"` (needs _event.lua first).
--
-- A sliding log, not a fixed window: a fixed window lets 2 x max through around its edge, and
-- an upstream that allows 50 calls a second would see 100 in a few milliseconds. The log holds
-- one "ms count" entry per claiming call (oldest first), so it stays short whatever the rate,
-- and the limit hash keeps their total in `used` so a call never sums the log.
-- The commands are ones the documented ACL grants already (no LINDEX: the head is popped and
-- pushed back), so turning a limit on needs no ACL change.

-- The limit as {max, per_ms, used} with expired entries dropped, or nil when there is none.
-- Fails like the other key checks if either key holds something botrix did not write.
local function rate_load(rate, log, now)
  local fields = redis.pcall('HMGET', rate, 'max', 'per_ms', 'used')
  if fields['err'] then
    fail_wrong_type(string.format('%s is not a rate limit', rate))
  end
  if not fields[1] and not fields[2] then
    return nil
  end
  local max, per = tonumber(fields[1]), tonumber(fields[2])
  if not (max and per and max >= 1 and per >= 1) then
    fail_wrong_type(string.format('%s is not a rate limit', rate))
  end
  local length = redis.pcall('LLEN', log)
  if type(length) == 'table' and length['err'] then
    fail_wrong_type(string.format('%s is not a rate log', log))
  end
  local limit = {max = max, per = per, used = tonumber(fields[3]) or 0, head = nil}
  while true do
    local entry = redis.call('LPOP', log)
    if not entry then
      limit.used = 0  -- the log expired as a whole (or was never written)
      break
    end
    local at, count = string.match(entry, '^(%d+) (%d+)$')
    at, count = tonumber(at), tonumber(count)
    if not at then
      redis.call('LPUSH', log, entry)  -- left as found, for whoever repairs it
      redis.call('HSET', rate, 'used', limit.used)  -- the entries dropped before it stay dropped
      fail_wrong_type(string.format('%s is not a rate log', log))
    end
    if at > now - per then
      redis.call('LPUSH', log, entry)
      limit.head = at
      break
    end
    limit.used = limit.used - count
  end
  return limit
end

-- How many of `want` the limit lets through now.
local function rate_room(limit, want)
  if not limit then
    return want
  end
  return math.max(0, math.min(want, limit.max - limit.used))
end

-- Records `claimed` claims; returns how many ms until the limit lets another through, or 0
-- when it did not stop this call short of `want`.
local function rate_spend(rate, log, limit, now, claimed, want)
  if not limit then
    return 0
  end
  if claimed > 0 then
    redis.call('RPUSH', log, now .. ' ' .. claimed)
    redis.call('EXPIRE', log, math.ceil(limit.per / 1000) + 1)
    limit.used = limit.used + claimed
    limit.head = limit.head or now
  end
  redis.call('HSET', rate, 'used', limit.used)
  if limit.used < limit.max or claimed >= want then
    return 0
  end
  -- Full: the oldest entry leaving the window frees at least one claim.
  return math.max(1, limit.head + limit.per - now)
end
