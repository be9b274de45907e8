"""Detection building blocks on top of torchvision: COCO evaluation, the MobileNet SSD model."""
