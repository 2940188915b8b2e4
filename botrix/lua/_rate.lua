-- rate_load / rate_room / rate_spend: a queue's rate limit (`botrix limit`): at most `max`
-- claims in any window of `per_ms`, counted across every worker, because the count lives
-- beside the queue. Pulled into scripts by `--- @include "_rate.lua"` (needs _event.lua first).
--
-- A sliding log, not a fixed window: a fixed window lets 2 x max through around its edge, and
-- an upstream that allows 50 calls a second would see 100 in a few milliseconds. The log holds
-- "ms count" entries, one per thousandth of the window with claims in it (oldest first), and
-- the limit hash keeps their total in `used`, so a call pops only the entries that left the
-- window and never sums the log. The log
-- has no TTL: were it to expire while the window still counted its entries (a window widened,
-- a queue idle at its limit), `used` would start over and let more through than the limit.
-- The head is popped and pushed back rather than read with LINDEX, which the documented ACL
-- does not grant (it grants RPOP, for the merge of the tail).

local RATE_MAX = 1000000000
local RATE_PER_MAX_MS = 604800000  -- a week

-- A field as botrix writes it (decimal digits, within bounds), or nil.
local function rate_number(value, low, high)
  if type(value) == 'string' and #value <= 14 and string.match(value, '^%d+$') then
    local n = tonumber(value)
    if n >= low and n <= high then
      return n
    end
  end
  return nil
end

-- The limit as {max, per, used, head} with expired entries dropped (and `used` written back),
-- or nil when there is none. Fails like the other key checks if either key holds something
-- botrix did not write.
local function rate_load(rate, log, now)
  local fields = redis.pcall('HMGET', rate, 'max', 'per_ms', 'used')
  if fields['err'] then
    fail_wrong_type(string.format('%s is not a rate limit', rate))
  end
  if not fields[1] and not fields[2] then
    return nil
  end
  local limit = {max = rate_number(fields[1], 1, RATE_MAX), per = rate_number(fields[2], 1, RATE_PER_MAX_MS),
    used = 0}
  if fields[3] then
    limit.used = rate_number(fields[3], 0, 1e14)
  end
  if not (limit.max and limit.per and limit.used) then
    fail_wrong_type(string.format('%s is not a rate limit', rate))
  end
  local length = redis.pcall('LLEN', log)
  if type(length) == 'table' and length['err'] then
    fail_wrong_type(string.format('%s is not a rate log', log))
  end
  local dropped = false
  while true do
    local entry = redis.call('LPOP', log)
    if not entry then
      dropped = dropped or limit.used ~= 0
      limit.used = 0  -- every entry left the window (or the log was deleted)
      break
    end
    local at, count = string.match(entry, '^(%d+) (%d+)$')
    at, count = rate_number(at, 0, 1e14), rate_number(count, 1, RATE_MAX)
    if not (at and count) then
      redis.call('LPUSH', log, entry)  -- left as found, for whoever repairs it
      if dropped then
        redis.call('HSET', rate, 'used', limit.used)  -- the entries dropped before it stay dropped
      end
      fail_wrong_type(string.format('%s is not a rate log', log))
    end
    if at > now - limit.per then
      redis.call('LPUSH', log, entry)
      limit.head = at
      break
    end
    limit.used = math.max(0, limit.used - count)
    dropped = true
  end
  if dropped then
    redis.call('HSET', rate, 'used', limit.used)
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
    -- Claims within one thousandth of the window share an entry, stamped with the end of that
    -- slice: the log holds at most ~1000 entries whatever the rate, and a claim counts as up
    -- to a slice later than it was, which can only hold the next ones back, never let more in.
    local slice = math.max(1, math.floor(limit.per / 1000))
    local at = math.ceil(now / slice) * slice
    local count = claimed
    local tail = redis.call('RPOP', log)
    if tail then
      local tail_at, tail_count = string.match(tail, '^(%d+) (%d+)$')
      if tonumber(tail_at) == at then
        count = count + tonumber(tail_count)
      else
        redis.call('RPUSH', log, tail)
      end
    end
    redis.call('RPUSH', log, at .. ' ' .. count)
    limit.used = limit.used + claimed
    limit.head = limit.head or at
    redis.call('HSET', rate, 'used', limit.used)
  end
  if limit.used < limit.max or claimed >= want then
    return 0
  end
  -- Full: the oldest entry leaving the window frees at least one claim.
  return math.max(1, math.min(limit.per, limit.head + limit.per - now))
end
