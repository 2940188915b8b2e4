-- Shared helpers, pulled into each script by `--- @include "_event.lua"` when the store loads it.

-- Milliseconds on the Redis server's clock: every score botrix writes uses this one clock,
-- so clock skew between worker machines cannot expire a lease early.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Stops the script, before its first write, if one of its keys holds another type (a producer
-- XADDing to the pending list by mistake). Redis does not undo a failed script's earlier writes,
-- so a job moved off one key whose next write failed would be on none, stuck for good.
-- `expected` maps key names to 'list' or 'zset'; a key that does not exist is fine. The probes
-- are LLEN and ZCARD rather than TYPE, which the documented least-privilege ACL does not grant.
local type_probes = {list = 'LLEN', zset = 'ZCARD'}

-- A plain string at level 0 (no position prefix), not an error table: Redis 7 replies
-- "ERR WRONGTYPE ...", while Redis 6.2's error handler would fail on a table ("attempt to
-- concatenate") and lose the message; with a string it replies "ERR Error running script
-- ...: WRONGTYPE ...". The store recognises both (store._wrong_type).
local function fail_wrong_type(what)
  error('WRONGTYPE ' .. what .. ': only botrix may write its keys', 0)
end
local function expect_types(expected)
  for key, kind in pairs(expected) do
    local reply = redis.pcall(type_probes[kind], key)
    if type(reply) == 'table' and reply['err'] then
      fail_wrong_type(string.format('%s is not a %s', key, kind))
    end
  end
end

-- The same for the queue's sequence: INCR fails on anything but the canonical form of a 64-bit
-- integer (no sign, no leading zero; 18 digits keep clear of overflow), and a claim increments
-- it after its pop. `GET` on another type fails here too, before the claim's first write.
local function expect_counter(key)
  local value = redis.call('GET', key)
  if value and not (value == '0' or (#value <= 18 and string.match(value, '^[1-9]%d*$'))) then
    fail_wrong_type(string.format('%s is not a counter', key))
  end
end

-- Whether a flag key (a queue's pause) is set; fails like expect_counter if something else
-- wrote another type there, naming the key, as a plain GET's error would not.
local function expect_flag(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value['err'] then
    fail_wrong_type(string.format('%s is not a pause flag', key))
  end
  return value ~= false
end

-- A slot in migration (Redis Cluster resharding): a script reads job records, keys it does not
-- declare, and one already moved would read as gone (record_fields returns nil), a running job
-- taken for an overwritten one. So every script that reads records also declares the queue's
-- events channel, which is never a key: while its slot is migrating Redis refuses such a script
-- whole (ASK or TRYAGAIN, retried by the caller), rather than running it on half the keys.

-- A job record's fields (HMGET), or nil when its key holds another type: something other than
-- botrix overwrote it and the job's data is gone. The scripts treat that job as one they cannot
-- run rather than fail; a failure after a pop or a ZREM would lose the other jobs in the call.
local function record_fields(record, ...)
  local reply = redis.pcall('HMGET', record, ...)
  if reply['err'] then
    return nil
  end
  return reply
end

-- A lane's claim fence (orphans.lua), 0 when unset. Anything but the digits orphans.lua writes
-- counts as unset rather than failing the call (Lua would read "inf" or "0x10" as numbers): the
-- key is a worker process's own, and a claim it lets through is only what happened before
-- fences existed.
local function fence_of(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'string' and #value <= 15 and string.match(value, '^%d+$') then
    return tonumber(value)
  end
  return 0
end

-- Publishes one transition on the queue's event channel.
local function publish(channel, event, job_id, queue, now, extra)
  local e = extra or {}
  e['event'] = event
  e['job_id'] = job_id
  e['queue'] = queue
  e['ts'] = now
  redis.call('PUBLISH', channel, cjson.encode(e))
end

-- Keeps the dead set at most `cap` long, dropping the oldest entries and their records.
local function cap_dead(dead_key, job_prefix, cap)
  local excess = redis.call('ZCARD', dead_key) - cap
  if excess > 0 then
    local oldest = redis.call('ZPOPMIN', dead_key, excess)
    for i = 1, #oldest, 2 do
      if redis.pcall('HGET', job_prefix .. oldest[i], 'status') == 'dead' then
        redis.call('DEL', job_prefix .. oldest[i])
      end
    end
  end
end

-- One command over a whole batch of arguments, e.g. `ZREM key id id ...`: one call for a
-- batch costs Redis less than one call per job. Lua's unpack is bounded by its C stack (about
-- 8,000 values), hence the chunks; they are even, so (score, member) pairs never split.
local function call_batched(command, key, args)
  for i = 1, #args, 4000 do
    redis.call(command, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end
