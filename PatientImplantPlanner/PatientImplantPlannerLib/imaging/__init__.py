"""From CT to anatomy, as numpy: CT import and checks, bone segmentation, vertebral levels and their sources,
and the keep-out structures an implant must not touch."""
