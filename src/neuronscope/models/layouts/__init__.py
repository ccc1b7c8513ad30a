"""Layout readers of vision-language families: where a batch row's image tokens sit and which grid cell each is.

One module per family; each family's declaration (:mod:`neuronscope.models.families`) names its reader, which is
imported only when an image layout is read.
"""
