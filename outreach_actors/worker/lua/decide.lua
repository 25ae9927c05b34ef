-- Take several limits at once, all or nothing (see worker/limiters.py).
-- KEYS: one list per limit, newest grant first, trimmed to `limit` entries (older
-- grants can never decide anything). ARGV[1]: now in µs or "" for the server clock,
-- then for each key: limit, period (µs), and the end of its calendar window (µs since
-- the epoch; 0 for a sliding window).
-- Returns {wait_ms, now_us, 1-based index of the binding limit or 0}.
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local wait, binding = 0, 0
local counts = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 * i - 1])
  local period = tonumber(ARGV[3 * i])
  local resets = tonumber(ARGV[3 * i + 1])
  local count = redis.call('LLEN', key)
  counts[i] = count
  if count >= limit then
    local needed
    if resets > 0 then
      -- A calendar window (a day): full until it ends, whenever its grants came.
      needed = resets - now
    else
      -- The limit-th most recent grant, read from the tail: O(1) when count == limit.
      local oldest = tonumber(redis.call('LINDEX', key, limit - count - 1))
      needed = oldest + period - now
    end
    if needed > wait then
      wait, binding = needed, i
    end
  end
end
if wait > 0 then
  return {math.ceil(wait / 1000), now, binding}
end
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 * i - 1])
  local period = tonumber(ARGV[3 * i])
  local resets = tonumber(ARGV[3 * i + 1])
  redis.call('LPUSH', key, now)
  if counts[i] >= limit then
    -- Only a full list (its oldest grant out of the window) grows past the limit.
    redis.call('LTRIM', key, 0, limit - 1)
  end
  if resets <= 0 then
    redis.call('PEXPIRE', key, math.ceil(period / 1000))
  elseif counts[i] == 0 then
    -- A calendar window's key lives until its window ends: set once, when it is made.
    redis.call('PEXPIRE', key, math.ceil(math.max(resets - now, 1000) / 1000))
  end
end
return {0, now, 0}
