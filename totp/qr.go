package totp

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"strings"

	"github.com/boombuler/barcode"
	"github.com/boombuler/barcode/qr"
)

// quiet is the light border around a QR code, in modules (the standard asks
// for 4; 2 scans fine on a screen and keeps the terminal code small).
const quiet = 2

func encodeQR(otpauthURL string) (barcode.Barcode, error) {
	b, err := qr.Encode(otpauthURL, qr.M, qr.Auto)
	if err != nil {
		return nil, fmt.Errorf("totp: QR code: %w", err) // the error never quotes the content
	}
	return b, nil
}

// PNG returns the QR code of an otpauth:// URL as a PNG of about size
// pixels square.
func PNG(otpauthURL string, size int) ([]byte, error) {
	b, err := encodeQR(otpauthURL)
	if err != nil {
		return nil, err
	}
	n := b.Bounds().Dx() + 2*quiet
	if size < n {
		size = n
	}
	if b, err = barcode.Scale(b, size/n*(n-2*quiet), size/n*(n-2*quiet)); err != nil {
		return nil, fmt.Errorf("totp: QR code: %w", err)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, padded{b, size / n * quiet}); err != nil {
		return nil, fmt.Errorf("totp: QR code: %w", err)
	}
	return buf.Bytes(), nil
}

// Terminal returns the QR code of an otpauth:// URL drawn with Unicode half
// blocks, two modules per character cell, light modules as ink: it scans on
// a terminal with a dark background (as qrencode -t UTF8 draws it).
func Terminal(otpauthURL string) (string, error) {
	b, err := encodeQR(otpauthURL)
	if err != nil {
		return "", err
	}
	n := b.Bounds().Dx()
	dark := func(x, y int) bool {
		x, y = x-quiet, y-quiet
		if x < 0 || y < 0 || x >= n || y >= n {
			return false
		}
		r, _, _, _ := b.At(x, y).RGBA()
		return r < 0x8000
	}
	var sb strings.Builder
	size := n + 2*quiet
	for y := 0; y < size; y += 2 {
		for x := 0; x < size; x++ {
			top, bottom := !dark(x, y), y+1 < size && !dark(x, y+1)
			switch {
			case top && bottom:
				sb.WriteString("█")
			case top:
				sb.WriteString("▀")
			case bottom:
				sb.WriteString("▄")
			default:
				sb.WriteByte(' ')
			}
		}
		sb.WriteByte('\n')
	}
	return sb.String(), nil
}

// padded is an image with a light border of pad pixels.
type padded struct {
	barcode.Barcode
	pad int
}

func (p padded) Bounds() (r image.Rectangle) {
	b := p.Barcode.Bounds()
	return image.Rectangle{Max: image.Point{b.Dx() + 2*p.pad, b.Dy() + 2*p.pad}}
}

func (p padded) At(x, y int) color.Color {
	b := p.Barcode.Bounds()
	x, y = x-p.pad, y-p.pad
	if x < 0 || y < 0 || x >= b.Dx() || y >= b.Dy() {
		return color.White
	}
	return p.Barcode.At(b.Min.X+x, b.Min.Y+y)
}
