-- wrk script: cycles through the distinct callers' tokens in $TOKENS_FILE, one per request,
-- so a verifying proxy cannot serve them from a cache of one.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
  tokens[#tokens + 1] = line
end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
