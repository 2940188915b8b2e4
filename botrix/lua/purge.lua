-- Delete dead jobs and their records.
--
-- KEYS[1] dead zset
-- ARGV[1] job record key prefix   ARGV[2..] ids, or none for every dead job
-- Only records still dead are deleted. Returns how many were.
local ids = {}
if #ARGV > 1 then
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', KEYS[1], 0, -1)
end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.pcall('HGET', ARGV[1] .. id, 'status') == 'dead' then
    redis.call('DEL', ARGV[1] .. id)
    n = n + 1
  end
end
return n
