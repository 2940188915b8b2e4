-- Delete dead jobs and their records.
--
-- KEYS[1] dead zset   KEYS[2] events channel (never a key: see _event.lua, "slot in migration")
-- ARGV[1] job record key prefix   ARGV[2..] ids (at most 1,000 a call, as for redrive.lua)
-- Each id leaves the dead set; only records still dead are deleted. Returns how many were.
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.pcall('HGET', ARGV[1] .. id, 'status') == 'dead' then
    redis.call('DEL', ARGV[1] .. id)
    n = n + 1
  end
end
return n
