-- wrk script: every request comes "from" another client address, so every
-- request does a real GeoIP lookup and selection. WRK_CLOSE=1 adds
-- "Connection: close" (a new connection per request); WRK_V6=1 sends every
-- fourth request from an IPv6 address spread over 2000::/3. WRK_DELAY_MS=N
-- waits N ms after each response before the connection's next request:
-- a load below saturation, for latency without a queue in front.
local n = 0
local close = os.getenv("WRK_CLOSE") == "1"
local v6 = os.getenv("WRK_V6") == "1"
-- Images the fixture's mirrors hold (bench_fixture: 40 packages in each
-- release's pkg/), so every request is a real choice among mirrors
-- verified to hold the file, never "origin, no candidate".
local releases = { "jackherer", "supersilverhaze" }
local pause = tonumber(os.getenv("WRK_DELAY_MS") or "")
if pause then
  delay = function() return pause end
end

request = function()
  n = n + 1
  local ip
  if v6 and n % 4 == 0 then
    -- 2000::/3 by its first 48 bits, where the allocations are.
    ip = string.format("%x:%x:%x::%x", 0x2000 + (n * 97) % 0x2000, (n * 7919) % 65536, (n * 31) % 65536, n % 65536)
  else
    -- A spread of routed IPv4 space: first octet 1..223 except 10 and 127.
    local a = 1 + (n * 37) % 223
    if a == 10 or a == 127 then a = a + 1 end
    ip = string.format("%d.%d.%d.%d", a, (n * 13) % 256, (n * 7) % 256, n % 256)
  end
  local headers = { ["X-Forwarded-For"] = ip }
  if close then headers["Connection"] = "close" end
  local path = string.format("/distri/%s/pkg/pkg%03d-amd64-1.0-1.squashfs", releases[1 + n % 2], (n * 7) % 40)
  return wrk.format("GET", path, headers)
end
