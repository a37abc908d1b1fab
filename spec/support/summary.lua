-- spec/support/summary.lua: busted output handler. busted's plain terminal report, then the
-- line CI reads last: "N passed, N failed" (errors count as failures; pending tests are
-- counted on the line before, since a missing GPU makes the CUDA specs pending, not failing).
return function(options)
  local busted = require 'busted'
  local handler = require 'busted.outputHandlers.plainTerminal'(options)
  busted.subscribe({ 'suite', 'end' }, function()
    io.write(('%d pending\n'):format(handler.pendingsCount))
    io.write(('%d passed, %d failed\n'):format(handler.successesCount,
                                               handler.failuresCount + handler.errorsCount))
    io.flush()
    return nil, true
  end)
  return handler
end
