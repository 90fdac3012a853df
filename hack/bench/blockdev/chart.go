package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// writeChart draws, per workload, one bar per target: its figure as a ratio
// to the anchor (librbd with journaling), or to the first target when the
// anchor was not measured. A dashed line marks 1.0.
func writeChart(path string, rep *report) error {
	if len(rep.Results) == 0 {
		return nil
	}
	base := anchor(rep)
	baseName := anchorName
	if base == nil {
		base, baseName = &rep.Results[0], rep.Results[0].Target+" ("+rep.Results[0].Backend+")"
	}
	maxRatio := 1.0
	for _, r := range rep.Results {
		for _, j := range jobs {
			if b := base.Values[j.Name]; b > 0 {
				maxRatio = max(maxRatio, r.Values[j.Name]/b)
			}
		}
	}
	const (
		w, h        = 1400, 720
		left, right = 70, 20
		top, bottom = 50, 260
		groupGap    = 30
	)
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	plotH := h - top - bottom
	groupW := (w - left - right) / len(jobs)
	barW := max(4, (groupW-groupGap)/len(rep.Results))
	y := func(v float64) int { return top + plotH - int(v/maxRatio*float64(plotH)) }
	palette := []color.RGBA{
		{31, 119, 180, 255}, {255, 127, 14, 255}, {44, 160, 44, 255}, {214, 39, 40, 255},
		{148, 103, 189, 255}, {140, 86, 75, 255}, {227, 119, 194, 255}, {127, 127, 127, 255},
		{188, 189, 34, 255}, {23, 190, 207, 255}, {0, 0, 0, 255}, {100, 100, 255, 255},
		{255, 187, 120, 255}, {152, 223, 138, 255}, {255, 152, 150, 255}, {197, 176, 213, 255},
		{158, 218, 229, 255}, {219, 219, 141, 255}, {196, 156, 148, 255}, {247, 182, 210, 255},
	}
	fill := func(x0, y0, x1, y1 int, c color.Color) {
		draw.Draw(img, image.Rect(x0, y0, x1, y1), &image.Uniform{c}, image.Point{}, draw.Src)
	}
	text := func(x, y int, s string, c color.Color) {
		d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
		d.DrawString(s)
	}
	fill(left, top, left+1, top+plotH, color.Black)
	fill(left, top+plotH, w-right, top+plotH+1, color.Black)
	for x := left; x < w-right; x += 8 {
		fill(x, y(1), x+4, y(1)+1, color.Gray{100})
	}
	for v := 0.0; v <= maxRatio; v += niceStep(maxRatio) {
		text(8, y(v)+4, fmt.Sprintf("%.1fx", v), color.Black)
	}
	for gi, j := range jobs {
		gx := left + gi*groupW + groupGap/2
		for ri, r := range rep.Results {
			b := base.Values[j.Name]
			if b <= 0 {
				continue
			}
			x := gx + ri*barW
			fill(x, y(r.Values[j.Name]/b), x+barW-2, top+plotH, palette[ri%len(palette)])
		}
		text(gx, top+plotH+18, j.Name, color.Black)
	}
	text(left, 30, "Ratio to "+baseName+" (higher is better)", color.Black)
	for ri, r := range rep.Results {
		x, yy := left+(ri%2)*(w/2), top+plotH+45+(ri/2)*20
		fill(x, yy-10, x+14, yy, palette[ri%len(palette)])
		text(x+20, yy, r.Target+" ("+r.Backend+")", color.Black)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func niceStep(max float64) float64 {
	for _, s := range []float64{0.25, 0.5, 1, 2, 5, 10, 20, 50} {
		if max/s <= 8 {
			return s
		}
	}
	return 100
}
