-- Paces each wrk connection to about one request every 2 ms, so 10 connections offer a
-- fixed, moderate rate (~4-5k req/s) well below every target's capacity: latency is then
-- the proxy's added delay, not queueing.
function delay()
  return 2
end
