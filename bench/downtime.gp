# Downtime against memory size, one line per method, medians with min-max bars;
# one panel per memory kind measured: incompressible (random), compressible (text).
# gnuplot -e "datafile='plot.dat'; outfile='downtime.png'; methods='floor ours podman'; modes='random text'" downtime.gp
set terminal pngcairo size 1400,600 font ",11" noenhanced
set output outfile
if (!exists("modes")) modes = "random text"
set multiplot layout 1,words(modes) title "Container downtime (frozen until running again), median of runs, bars min-max"
set logscale x 2
set xlabel "memory held by the container (MiB)"
set ylabel "downtime (s)"
set grid
set key top left
set yrange [0:*]
set xrange [48:1400]
set xtics (64, 256, 1024)
n = words(methods)
do for [mode = 0:words(modes) - 1] {
  set title (word(modes, mode + 1) eq "random" ? "incompressible (random)" : "compressible (text)")
  plot for [i = 1:n] datafile index (mode * n + i - 1) using 1:2:3:4 with yerrorlines lw 2 pt 7 title word(methods, i)
}
unset multiplot
