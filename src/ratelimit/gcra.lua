-- GCRA on one key, with the arithmetic of governor (the local limiter), in microseconds.
--
-- The key holds the bucket's theoretical arrival time (TAT). A request is allowed when
-- now >= TAT - tau, where tau = interval * (burst - 1); an allowed request moves the TAT to
-- max(TAT, now) + interval. The key expires at the new TAT, the moment the bucket is full
-- again, so Redis only holds callers whose bucket is not full.
--
-- KEYS[1]  the bucket
-- ARGV[1]  emission interval, microseconds (>= 1)
-- ARGV[2]  burst (>= 1)
-- ARGV[3]  now in microseconds, or "" for the Redis server's clock (tests pass a clock)
--
-- Returns {1, remaining, 0} when allowed, {0, 0, wait} when refused (wait in microseconds).
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[3])
end
local tau = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
local earliest = tat - tau
if now < earliest then
  return {0, 0, earliest - now}
end
if tat < now then
  tat = now
end
local next_tat = tat + interval
-- %.0f: tostring would print a 16-digit TAT in exponent form and lose microseconds.
redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
  'PX', string.format('%.0f', math.ceil((next_tat - now) / 1000)))
local remaining = math.floor(math.min(now + tau + interval - next_tat, tau + interval) / interval)
return {1, remaining, 0}
