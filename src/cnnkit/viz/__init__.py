"""Figures (matplotlib is used only in this package): learning curves, confusion matrix,
predictions on test images and image grids; each function writes a PNG and returns its path."""
from cnnkit.viz.grid import image_grid, make_grid
from cnnkit.viz.plots import display_images, plot_confusion, plot_curves, plot_predictions

__all__ = ["plot_curves", "plot_confusion", "plot_predictions", "image_grid", "make_grid",
           "display_images"]
