# Each lab migration on one time line (bench.py report: timeline.dat): the
# coordinator's phases in a row, the target's restore taken apart under it,
# the downtime (frozen until running again) as the black line above.
# gnuplot -e "datafile='timeline.dat'; downfile='timeline-downtime.dat'; outfile='timeline.png'; phases='...'; rows=N" timeline.gp
set terminal pngcairo size 1400,(200 + 40 * rows) font ",10" noenhanced
set output outfile
set title "Where each migration's time goes (bars: phases; black: downtime)"
set xlabel "seconds from the migration's start"
set yrange [-1:rows]
set xrange [0:*]
set grid x
set key outside right
set style fill solid 0.85 noborder
# Eleven phases, eleven colours (gnuplot's own cycle has eight).
colours = "#9400d3 #009e73 #56b4e9 #e69f00 #f0e442 #0072b2 #e51e10 #404040 #c080ff #40c0a0 #a0d0f0"
do for [i = 1:words(colours)] { set linetype i lc rgb word(colours, i) }
plot datafile using (($2 + $3) / 2):1:(($3 - $2) / 2):(0.14):4:ytic(int($1) == $1 ? stringcolumn(5) : "") \
       with boxxyerror lc variable notitle, \
     for [i = 1:words(phases)] NaN with boxes lc i title word(phases, i), \
     downfile using 2:1:($3):(0) with vectors nohead lw 3 lc rgb "black" title "downtime"
