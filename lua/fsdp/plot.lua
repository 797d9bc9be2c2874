-- fsdp.plot: `fsdp-lua plot RUN_DIR [--out FILE]` draws a run's
-- metrics.jsonl as one SVG (default RUN_DIR/plot.svg) with three panels
-- sharing the step axis: training and validation loss, learning rate, and
-- throughput (tokens/s). Plain string building, no dependencies.
--
-- When a step is logged more than once (a run resumed from an earlier
-- checkpoint logs its steps again) the last value wins. A final line cut
-- short by a run still writing is skipped.
local fs = require 'fsdp.fs'
local json = require 'fsdp.json'

local M = {}

M.panels = {
   {title = 'Loss', ylabel = 'loss', series = {
      {key = 'loss', label = 'training loss', color = '#1f77b4'},
      {key = 'val_loss', label = 'validation loss', color = '#d62728', markers = true}}},
   {title = 'Learning rate', ylabel = 'learning rate', series = {
      {key = 'lr', label = 'learning rate', color = '#2ca02c'}}},
   {title = 'Throughput', ylabel = 'tokens / s', series = {
      {key = 'tokens_per_s', label = 'tokens/s', color = '#9467bd'}}},
}

local W, PANEL_H, HEADER_H = 900, 300, 44
local LEFT, RIGHT, TOP, BOTTOM = 90, 24, 34, 48

local function usage()
   return 'usage: fsdp-lua plot RUN_DIR [--out FILE]   draw RUN_DIR/metrics.jsonl as an SVG (default RUN_DIR/plot.svg)'
end

local function finite(v) return type(v) == 'number' and v == v and v ~= math.huge and v ~= -math.huge end

-- the records of a metrics.jsonl file, in order
function M.read_metrics(path)
   local text, err = fs.read(path)
   if not text then error('plot: cannot read ' .. path .. ': ' .. tostring(err), 0) end
   if not text:find('%S') then error('plot: ' .. path .. ' is empty: no metrics have been logged yet', 0) end
   local records, n, pos = {}, 0, 1
   while pos <= #text do
      local e = text:find('\n', pos, true)
      local line = text:sub(pos, (e or #text + 1) - 1)
      n, pos = n + 1, (e or #text) + 1
      if line:find('%S') then
         local ok, rec = pcall(json.decode, line)
         if not ok then
            -- a last line without its newline is being written right now
            if e then error(string.format('plot: %s line %d: %s', path, n, rec), 0) end
         elseif type(rec) ~= 'table' or not finite(rec.step) then
            error(string.format('plot: %s line %d: not a metrics record (an object with a numeric "step")', path, n), 0)
         else
            records[#records + 1] = rec
         end
      end
   end
   if #records == 0 then error('plot: ' .. path .. ' holds no complete metrics line', 0) end
   return records
end

-- {steps = {...}, values = {...}} for one metric, sorted by step, last write
-- of a step winning, non-finite values left out
function M.series(records, key)
   local at, steps = {}, {}
   for _, r in ipairs(records) do
      local v = r[key]
      if finite(v) then
         if at[r.step] == nil then steps[#steps + 1] = r.step end
         at[r.step] = v
      end
   end
   table.sort(steps)
   local values = {}
   for i, s in ipairs(steps) do values[i] = at[s] end
   return {steps = steps, values = values}
end

-- round ticks covering [lo, hi]: about n of them, spaced 1, 2 or 5 x 10^k
-- (and at least min_step apart)
function M.ticks(lo, hi, n, min_step)
   if hi < lo then lo, hi = hi, lo end
   if hi == lo then
      local pad = lo == 0 and 1 or math.abs(lo) * 0.1
      lo, hi = lo - pad, hi + pad
   end
   local raw = (hi - lo) / (n or 5)
   local mag = 10 ^ math.floor(math.log10(raw))
   local f = raw / mag
   local step = math.max((f < 1.5 and 1 or f < 3 and 2 or f < 7 and 5 or 10) * mag, min_step or 0)
   local first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
   local out = {}
   for i = first, last do out[#out + 1] = i * step end
   return out, step
end

-- a tick label with as many decimals as the spacing needs
function M.fmt_tick(v, step)
   if math.abs(v) < step * 1e-6 then v = 0 end
   local big = math.max(math.abs(v), step)
   if step < 1e-3 or big >= 1e6 then
      if v == 0 then return '0' end
      local mant, exp = string.format('%.2e', v):match('^(.-)e(.*)$') -- 6.00e-04 -> 6e-4
      mant = mant:gsub('%.?0+$', '')
      return mant .. 'e' .. tonumber(exp)
   end
   local decimals = math.max(0, math.ceil(-math.log10(step) - 1e-9))
   return string.format(string.format('%%.%df', decimals), v)
end

local function esc(s)
   return (tostring(s):gsub('[&<>"]', {['&'] = '&amp;', ['<'] = '&lt;', ['>'] = '&gt;', ['"'] = '&quot;'}))
end

local function num(x) return string.format('%.2f', x) end

-- at most two points (the lowest and the highest, in step order) per pixel
-- column, so a long run stays a small file that draws the same
local function thin(xs, ys, width)
   if #xs <= 4 * width then return xs, ys end
   local ox, oy = {}, {}
   local i = 1
   while i <= #xs do
      local col = math.floor(xs[i])
      local lo, hi, j = i, i, i
      while j + 1 <= #xs and math.floor(xs[j + 1]) == col do
         j = j + 1
         if ys[j] < ys[lo] then lo = j end
         if ys[j] > ys[hi] then hi = j end
      end
      local a, b = math.min(lo, hi), math.max(lo, hi)
      ox[#ox + 1], oy[#oy + 1] = xs[a], ys[a]
      if b ~= a then ox[#ox + 1], oy[#oy + 1] = xs[b], ys[b] end
      i = j + 1
   end
   return ox, oy
end

local function draw_panel(out, panel, all, oy, xticks, xstep)
   local x0, x1 = LEFT, W - RIGHT
   local y0, y1 = oy + TOP, oy + PANEL_H - BOTTOM
   local function add(fmt, ...) out[#out + 1] = string.format(fmt, ...) end

   add('<g class="panel">')
   add('<text x="%s" y="%s" font-size="15" font-weight="bold">%s</text>', num(x0), num(oy + 22), esc(panel.title))

   local lo, hi, any = math.huge, -math.huge, false
   for _, s in ipairs(panel.series) do
      for _, v in ipairs(all[s.key].values) do
         lo, hi, any = math.min(lo, v), math.max(hi, v), true
      end
   end
   add('<rect x="%s" y="%s" width="%s" height="%s" fill="#fff" stroke="#444"/>', num(x0), num(y0), num(x1 - x0), num(y1 - y0))
   if not any then
      local keys = {}
      for i, s in ipairs(panel.series) do keys[i] = s.key end
      add('<text x="%s" y="%s" text-anchor="middle" fill="#888">no data (%s not logged)</text>',
          num((x0 + x1) / 2), num((y0 + y1) / 2), esc(table.concat(keys, ', ')))
      add('</g>')
      return
   end

   local yticks, ystep = M.ticks(lo, hi, 5)
   local ylo, yhi = yticks[1], yticks[#yticks]
   local xlo, xhi = xticks[1], xticks[#xticks]
   local function px(s) return x0 + (s - xlo) / (xhi - xlo) * (x1 - x0) end
   local function py(v) return y1 - (v - ylo) / (yhi - ylo) * (y1 - y0) end

   -- grid, ticks and their labels
   for _, v in ipairs(yticks) do
      local y = py(v)
      add('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#e4e4e4"/>', num(x0), num(y), num(x1), num(y))
      add('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#444"/>', num(x0 - 5), num(y), num(x0), num(y))
      add('<text x="%s" y="%s" text-anchor="end" font-size="11">%s</text>', num(x0 - 8), num(y + 4), esc(M.fmt_tick(v, ystep)))
   end
   for _, s in ipairs(xticks) do
      local x = px(s)
      add('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#e4e4e4"/>', num(x), num(y0), num(x), num(y1))
      add('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#444"/>', num(x), num(y1), num(x), num(y1 + 5))
      add('<text x="%s" y="%s" text-anchor="middle" font-size="11">%s</text>', num(x), num(y1 + 18), esc(M.fmt_tick(s, xstep)))
   end
   add('<text x="%s" y="%s" text-anchor="middle" font-size="12">step</text>', num((x0 + x1) / 2), num(y1 + 36))
   add('<text transform="translate(%s,%s) rotate(-90)" text-anchor="middle" font-size="12">%s</text>',
       num(18), num((y0 + y1) / 2), esc(panel.ylabel))

   -- the series
   local shown = {}
   for _, s in ipairs(panel.series) do
      local d = all[s.key]
      if #d.steps > 0 then
         local xs, ys = {}, {}
         for i = 1, #d.steps do xs[i], ys[i] = px(d.steps[i]), py(d.values[i]) end
         xs, ys = thin(xs, ys, x1 - x0)
         local pts = {}
         for i = 1, #xs do pts[i] = num(xs[i]) .. ',' .. num(ys[i]) end
         add('<polyline class="series" data-key="%s" fill="none" stroke="%s" stroke-width="1.5" stroke-linejoin="round" points="%s"/>',
             esc(s.key), s.color, table.concat(pts, ' '))
         if s.markers or #xs == 1 then
            for i = 1, math.min(#xs, 500) do
               add('<circle cx="%s" cy="%s" r="2.5" fill="%s"/>', num(xs[i]), num(ys[i]), s.color)
            end
         end
         shown[#shown + 1] = s
      end
   end

   -- legend, top right inside the plot
   local lw, lh = 150, 8 + 18 * #shown
   local lx, ly = x1 - lw - 8, y0 + 8
   add('<g class="legend"><rect x="%s" y="%s" width="%s" height="%s" fill="#fff" fill-opacity="0.85" stroke="#bbb"/>',
       num(lx), num(ly), num(lw), num(lh))
   for i, s in ipairs(shown) do
      local y = ly + 4 + 18 * i - 9
      add('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="2"/>', num(lx + 8), num(y), num(lx + 32), num(y), s.color)
      add('<text x="%s" y="%s" font-size="12">%s</text>', num(lx + 38), num(y + 4), esc(s.label))
   end
   add('</g></g>')
end

-- the SVG text for a list of metrics records
function M.svg(records, title)
   local all, smin, smax, any = {}, math.huge, -math.huge, false
   for _, panel in ipairs(M.panels) do
      for _, s in ipairs(panel.series) do
         local d = M.series(records, s.key)
         all[s.key] = d
         if #d.steps > 0 then smin, smax, any = math.min(smin, d.steps[1]), math.max(smax, d.steps[#d.steps]), true end
      end
   end
   if not any then return nil end
   if smax - smin < 1 then smax = smin + 1 end -- one step: a unit-wide axis
   local xticks, xstep = M.ticks(smin, smax, 8, 1) -- steps are whole numbers

   local H = HEADER_H + PANEL_H * #M.panels
   local out = {}
   out[1] = string.format('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" ' ..
                          'font-family="sans-serif">', W, H, W, H)
   out[2] = string.format('<rect width="%d" height="%d" fill="#fafafa"/>', W, H)
   out[3] = string.format('<text x="%d" y="28" font-size="17">%s</text>', LEFT, esc(title or 'metrics'))
   for i, panel in ipairs(M.panels) do
      draw_panel(out, panel, all, HEADER_H + (i - 1) * PANEL_H, xticks, xstep)
   end
   out[#out + 1] = '</svg>'
   return table.concat(out, '\n') .. '\n'
end

-- plot.write(run_dir [, out]) -> the path written; errors name the file
function M.write(run_dir, out)
   run_dir = run_dir:gsub('(.)/+$', '%1')
   if not fs.is_dir(run_dir) then error('plot: run directory ' .. run_dir .. ' does not exist', 0) end
   local path = run_dir .. '/metrics.jsonl'
   if not fs.exists(path) then
      error('plot: ' .. path .. ' does not exist (was the run started with --run-dir ' .. run_dir .. '?)', 0)
   end
   local records = M.read_metrics(path)
   local first, last = math.huge, -math.huge
   for _, r in ipairs(records) do first, last = math.min(first, r.step), math.max(last, r.step) end
   local svg = M.svg(records, string.format('%s: steps %d to %d', run_dir, first, last))
   if not svg then error('plot: ' .. path .. ' has no loss, val_loss, lr or tokens_per_s values to draw', 0) end
   out = out or (run_dir .. '/plot.svg')
   local f, err = io.open(out, 'wb')
   if not f then error('plot: cannot write ' .. out .. ': ' .. tostring(err), 0) end
   f:write(svg)
   f:close()
   return out, #records
end

function M.main(args)
   local run_dir, out
   local i = 1
   while i <= #args do
      local a = args[i]
      if a == '--help' or a == '-h' then print(usage()); return 0
      elseif a == '--out' or a == '-o' then
         out = args[i + 1]
         if not out then error('plot: --out wants a file name\n' .. usage(), 0) end
         i = i + 1
      elseif a:match('^%-%-out=') then out = a:sub(7)
      elseif a:sub(1, 1) == '-' then error('plot: unknown option ' .. a .. '\n' .. usage(), 0)
      elseif run_dir then error('plot: one run directory at a time (got ' .. run_dir .. ' and ' .. a .. ')', 0)
      else run_dir = a end
      i = i + 1
   end
   if not run_dir then error(usage(), 0) end
   local path, n = M.write(run_dir, out)
   print(string.format('wrote %s (%d metrics records)', path, n))
   return 0
end

return M
