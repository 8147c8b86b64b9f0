"""Hand-written word lists for the synthetic multilingual corpus.

A *concept* is one row of :data:`_CONCEPT_TABLE`: the same meaning written in every language, so the table is
also the per-word dictionary used for cross-lingual pairs. A cell is ``primary`` or ``primary/synonym``; the
synonym is the paraphrase that queries use more often than documents. *Fillers* are frequent function and
template words (listed from most to least frequent), shared by all documents of a language. *Question words*
open queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "ru", "el", "zh", "ar")
"""Language codes, in the column order of the concept table."""

SCRIPTS: dict[str, str] = {
    "en": "Latin",
    "de": "Latin",
    "fr": "Latin",
    "es": "Latin",
    "ru": "Cyrillic",
    "el": "Greek",
    "zh": "Han",
    "ar": "Arabic",
}

# en | de | fr | es | ru | el | zh | ar     (cell: primary or primary/synonym)
_CONCEPT_TABLE = """
river | Fluss | rivière | río | река | ποτάμι | 河流 | نهر
mountain/peak | Berg/Gipfel | montagne/sommet | montaña/cumbre | гора/вершина | βουνό/κορυφή | 山脉/山峰 | جبل/قمة
forest/woods | Wald/Forst | forêt | bosque/selva | лес/чаща | δάσος | 森林/树林 | غابة
lake | See | lac | lago | озеро | λίμνη | 湖泊 | بحيرة
ocean/sea | Ozean/Meer | océan/mer | océano/mar | океан/море | ωκεανός/θάλασσα | 海洋/大海 | محيط/بحر
island | Insel | île | isla | остров | νησί | 岛屿 | جزيرة
desert | Wüste | désert | desierto | пустыня | έρημος | 沙漠 | صحراء
valley | Tal | vallée | valle | долина | κοιλάδα | 山谷 | وادي
city/metropolis | Stadt/Metropole | ville/métropole | ciudad/metrópoli | город/мегаполис | πόλη/μητρόπολη | 城市/都市 | مدينة/حاضرة
village/hamlet | Dorf/Weiler | village/hameau | pueblo/aldea | деревня/село | χωριό/οικισμός | 村庄/乡村 | قرية/ضيعة
house/home | Haus/Heim | maison/foyer | casa/hogar | дом/жилище | σπίτι/κατοικία | 房子/住宅 | بيت/منزل
bridge | Brücke | pont | puente | мост | γέφυρα | 桥梁 | جسر
road/way | Straße/Weg | route/chemin | carretera/camino | дорога/путь | δρόμος/οδός | 道路/公路 | طريق/درب
harbor/port | Hafen | port/havre | puerto/dársena | гавань/порт | λιμάνι | 港口/码头 | ميناء/مرفأ
tower | Turm | tour | torre | башня | πύργος | 塔楼 | برج
castle | Burg | château | castillo | замок | κάστρο | 城堡 | قلعة
church | Kirche | église | iglesia | церковь | εκκλησία | 教堂 | كنيسة
market | Markt | marché | mercado | рынок | αγορά | 市场 | سوق
school | Schule | école | escuela | школа | σχολείο | 学校 | مدرسة
hospital/clinic | Krankenhaus/Klinik | hôpital/clinique | hospital/clínica | больница/клиника | νοσοκομείο/κλινική | 医院/诊所 | مستشفى/عيادة
library | Bibliothek | bibliothèque | biblioteca | библиотека | βιβλιοθήκη | 图书馆 | مكتبة
museum | Museum | musée | museo | музей | μουσείο | 博物馆 | متحف
garden | Garten | jardin | jardín | сад | κήπος | 花园 | حديقة
kitchen | Küche | cuisine | cocina | кухня | κουζίνα | 厨房 | مطبخ
factory/plant | Fabrik/Werk | usine/fabrique | fábrica/planta | завод/фабрика | εργοστάσιο | 工厂/厂房 | مصنع/معمل
farm/ranch | Bauernhof | ferme | granja/rancho | ферма/хутор | φάρμα/αγρόκτημα | 农场/牧场 | مزرعة
window | Fenster | fenêtre | ventana | окно | παράθυρο | 窗户 | نافذة
door | Tür | porte | puerta | дверь | πόρτα | 大门 | باب
table | Tisch | table | mesa | стол | τραπέζι | 桌子 | طاولة
chair | Stuhl | chaise | silla | стул | καρέκλα | 椅子 | كرسي
bed | Bett | lit | cama | кровать | κρεβάτι | 床铺 | سرير
lamp | Lampe | lampe | lámpara | лампа | λάμπα | 台灯 | مصباح
mirror | Spiegel | miroir | espejo | зеркало | καθρέφτης | 镜子 | مرآة
book | Buch | livre | libro | книга | βιβλίο | 书籍 | كتاب
letter | Brief | lettre | carta | письмо | επιστολή | 信件 | رسالة
newspaper | Zeitung | journal | periódico | газета | εφημερίδα | 报纸 | صحيفة
music | Musik | musique | música | музыка | μουσική | 音乐 | موسيقى
song/tune | Lied/Melodie | chanson/mélodie | canción/melodía | песня/мелодия | τραγούδι/μελωδία | 歌曲/曲子 | أغنية/لحن
painting/picture | Gemälde/Bild | tableau/peinture | pintura/cuadro | картина/живопись | πίνακας/ζωγραφιά | 绘画/画作 | لوحة/رسمة
film/movie | Film/Kinofilm | film | película/cinta | фильм/кино | ταινία/φιλμ | 电影/影片 | فيلم
theater | Theater | théâtre | teatro | театр | θέατρο | 剧院 | مسرح
game/match | Spiel/Partie | jeu/partie | juego/partido | игра/матч | παιχνίδι/αγώνας | 游戏/比赛 | لعبة/مباراة
ball | Ball | ballon | pelota | мяч | μπάλα | 皮球 | كرة
horse/steed | Pferd/Ross | cheval/destrier | caballo/corcel | лошадь/конь | άλογο/άτι | 马匹/骏马 | حصان/فرس
dog/hound | Hund/Köter | chien/toutou | perro/can | собака/пёс | σκύλος/σκυλί | 小狗/犬只 | كلب/جرو
cat/kitty | Katze/Mieze | chat/minou | gato/minino | кошка/котик | γάτα/γατούλα | 小猫/猫咪 | قطة/هرة
bird | Vogel | oiseau | pájaro | птица | πουλί | 鸟类 | طائر
fish | Fisch | poisson | pez | рыба | ψάρι | 鱼类 | سمك
cow | Kuh | vache | vaca | корова | αγελάδα | 奶牛 | بقرة
sheep | Schaf | mouton | oveja | овца | πρόβατο | 绵羊 | خروف
bee | Biene | abeille | abeja | пчела | μέλισσα | 蜜蜂 | نحلة
wolf | Wolf | loup | lobo | волк | λύκος | 狼群 | ذئب
bear | Bär | ours | oso | медведь | αρκούδα | 狗熊 | دب
lion | Löwe | lion | león | лев | λιοντάρι | 狮子 | أسد
tree | Baum | arbre | árbol | дерево | δέντρο | 树木 | شجرة
flower | Blume | fleur | flor | цветок | λουλούδι | 花朵 | زهرة
grass | Gras | herbe | hierba | трава | χόρτο | 草地 | عشب
seed | Samen | graine | semilla | семя | σπόρος | 种子 | بذرة
apple | Apfel | pomme | manzana | яблоко | μήλο | 苹果 | تفاحة
bread/loaf | Brot/Laib | pain/miche | pan/hogaza | хлеб/буханка | ψωμί/καρβέλι | 面包 | خبز/رغيف
cheese | Käse | fromage | queso | сыр | τυρί | 奶酪 | جبن
milk | Milch | lait | leche | молоко | γάλα | 牛奶 | حليب
egg | Ei | œuf | huevo | яйцо | αυγό | 鸡蛋 | بيضة
meat | Fleisch | viande | carne | мясо | κρέας | 肉类 | لحم
soup | Suppe | soupe | sopa | суп | σούπα | 汤羹 | حساء
oil | Öl | huile | aceite | масло | λάδι | 油脂 | زيت
wine | Wein | vin | vino | вино | κρασί | 葡萄酒 | نبيذ
coffee | Kaffee | café | café | кофе | καφές | 咖啡 | قهوة
tea | Tee | thé | té | чай | τσάι | 茶叶 | شاي
rice | Reis | riz | arroz | рис | ρύζι | 大米 | أرز
salt | Salz | sel | sal | соль | αλάτι | 食盐 | ملح
sugar | Zucker | sucre | azúcar | сахар | ζάχαρη | 白糖 | سكر
honey | Honig | miel | miel | мёд | μέλι | 蜂蜜 | عسل
water | Wasser | eau | agua | вода | νερό | 清水 | ماء
fire | Feuer | feu | fuego | огонь | φωτιά | 火焰 | نار
stone/rock | Stein/Fels | pierre/roche | piedra/roca | камень/скала | πέτρα/βράχος | 石头/岩石 | حجر/صخرة
sand | Sand | sable | arena | песок | άμμος | 沙子 | رمل
soil | Erde | terre | tierra | земля | χώμα | 土壤 | تربة
gold | Gold | or | oro | золото | χρυσός | 黄金 | ذهب
silver | Silber | argent | plata | серебро | ασήμι | 白银 | فضة
iron | Eisen | fer | hierro | железо | σίδηρος | 铁器 | حديد
wood | Holz | bois | madera | древесина | ξύλο | 木材 | خشب
glass | Glas | verre | vidrio | стекло | γυαλί | 玻璃 | زجاج
paper | Papier | papier | papel | бумага | χαρτί | 纸张 | ورق
rain/shower | Regen/Schauer | pluie/averse | lluvia/aguacero | дождь/ливень | βροχή/μπόρα | 雨水/阵雨 | مطر/زخة
snow | Schnee | neige | nieve | снег | χιόνι | 雪花 | ثلج
wind/breeze | Wind/Brise | vent/brise | viento/brisa | ветер/бриз | άνεμος/αύρα | 大风/微风 | رياح/نسيم
storm/tempest | Sturm/Unwetter | tempête/orage | tormenta/temporal | буря/шторм | καταιγίδα/θύελλα | 风暴/暴风 | عاصفة/إعصار
cloud | Wolke | nuage | nube | облако | σύννεφο | 云朵 | سحابة
ice | Eis | glace | hielo | лёд | πάγος | 冰块 | جليد
sun | Sonne | soleil | sol | солнце | ήλιος | 太阳 | شمس
moon | Mond | lune | luna | луна | φεγγάρι | 月亮 | قمر
star | Stern | étoile | estrella | звезда | αστέρι | 星星 | نجمة
winter | Winter | hiver | invierno | зима | χειμώνας | 冬天 | شتاء
summer | Sommer | été | verano | лето | καλοκαίρι | 夏天 | صيف
morning/dawn | Morgen/Morgengrauen | matin/aube | mañana/alba | утро/рассвет | πρωί/αυγή | 早晨/清晨 | صباح/فجر
night | Nacht | nuit | noche | ночь | νύχτα | 夜晚 | ليل
doctor/physician | Arzt/Doktor | médecin/docteur | médico/doctor | врач/доктор | γιατρός/ιατρός | 医生/大夫 | طبيب/دكتور
teacher/instructor | Lehrer/Lehrkraft | professeur/enseignant | maestro/profesor | учитель/преподаватель | δάσκαλος/εκπαιδευτικός | 老师/教师 | معلم/مدرس
farmer | Bauer | fermier | granjero | фермер | αγρότης | 农民 | مزارع
soldier/warrior | Soldat/Krieger | soldat/guerrier | soldado/guerrero | солдат/воин | στρατιώτης/πολεμιστής | 士兵/战士 | جندي/محارب
king/monarch | König/Monarch | roi/monarque | rey/monarca | король/монарх | βασιλιάς/μονάρχης | 国王/君主 | ملك/عاهل
queen | Königin | reine | reina | королева | βασίλισσα | 女王 | ملكة
child/kid | Kind | enfant/gamin | niño/chico | ребёнок/малыш | παιδί/μωρό | 孩子/儿童 | طفل/ولد
mother/mom | Mutter/Mama | mère/maman | madre/mamá | мать/мама | μητέρα/μαμά | 母亲/妈妈 | أم/ماما
father/dad | Vater/Papa | père/papa | padre/papá | отец/папа | πατέρας/μπαμπάς | 父亲/爸爸 | أب/بابا
friend/companion | Freund/Kumpel | ami/copain | amigo/compañero | друг/приятель | φίλος/σύντροφος | 朋友/伙伴 | صديق/رفيق
ship/vessel | Schiff/Dampfer | navire/bateau | barco/buque | корабль/судно | πλοίο/καράβι | 轮船/船舶 | سفينة/مركب
train | Zug | train | tren | поезд | τρένο | 火车 | قطار
car/automobile | Auto/Wagen | voiture/auto | coche/automóvil | машина/автомобиль | αυτοκίνητο/αμάξι | 汽车/轿车 | سيارة/عربة
bicycle/bike | Fahrrad/Rad | vélo/bicyclette | bicicleta/bici | велосипед/велик | ποδήλατο | 自行车/单车 | دراجة
airplane/aircraft | Flugzeug/Flieger | avion/aéronef | avión/aeronave | самолёт/лайнер | αεροπλάνο/αεροσκάφος | 飞机/客机 | طائرة/طيارة
engine | Motor | moteur | motor | двигатель | κινητήρας | 发动机 | محرك
computer | Computer | ordinateur | ordenador | компьютер | υπολογιστής | 电脑 | حاسوب
telephone | Telefon | téléphone | teléfono | телефон | τηλέφωνο | 电话 | هاتف
clock | Uhr | horloge | reloj | часы | ρολόι | 时钟 | ساعة
key | Schlüssel | clé | llave | ключ | κλειδί | 钥匙 | مفتاح
money/cash | Geld/Bargeld | monnaie/espèces | dinero/efectivo | деньги/наличные | χρήματα/μετρητά | 金钱/现金 | مال/نقود
shoe | Schuh | chaussure | zapato | ботинок | παπούτσι | 鞋子 | حذاء
shirt | Hemd | chemise | camisa | рубашка | πουκάμισο | 衬衫 | قميص
hat | Hut | chapeau | sombrero | шляпа | καπέλο | 帽子 | قبعة
war/conflict | Krieg/Konflikt | guerre/conflit | guerra/conflicto | война/конфликт | πόλεμος/σύγκρουση | 战争/冲突 | حرب/نزاع
peace | Frieden | paix | paz | мир | ειρήνη | 和平 | سلام
law | Gesetz | loi | ley | закон | νόμος | 法律 | قانون
health | Gesundheit | santé | salud | здоровье | υγεία | 健康 | صحة
medicine/drug | Medizin/Arznei | médicament/remède | medicina/fármaco | лекарство/препарат | φάρμακο/σκεύασμα | 药物/药品 | دواء/عقار
language | Sprache | langue | idioma | язык | γλώσσα | 语言 | لغة
history | Geschichte | histoire | historia | история | ιστορία | 历史 | تاريخ
science | Wissenschaft | science | ciencia | наука | επιστήμη | 科学 | علم
energy/power | Energie/Kraft | énergie/puissance | energía/potencia | энергия/мощность | ενέργεια/ισχύς | 能源/电力 | طاقة/قدرة
"""

_FILLERS: dict[str, str] = {
    "en": "the of and a in with for on is this to by from at was as about near also some many new old very "
    "often here there which where local general report article information details overview section page "
    "note topic guide known every other after before small large",
    "de": "der die und das ein mit für im ist eine von zu auf bei aus war als über nahe auch einige viele neue "
    "alte sehr oft hier dort welche wo lokale allgemein Bericht Artikel Information Details Überblick "
    "Abschnitt Seite Hinweis Thema Leitfaden bekannt jede andere nach vor kleine große",
    "fr": "le la de et les un une des du avec pour dans sur est ce cette par au était comme près aussi quelques "
    "nombreux nouveau ancien très souvent ici là quel où local général rapport article information détails "
    "aperçu section page note sujet guide connu chaque autre après avant petit grand",
    "es": "el la de y los un una del en con para sobre es este esta por desde al era como cerca también algunos "
    "muchos nuevo viejo muy frecuente aquí allí cual donde local general informe artículo información "
    "detalles resumen sección página nota tema guía conocido cada otro después antes pequeño grande",
    "ru": "и в на с о по из для это этот эта был как у к от при была около также несколько много новый старый "
    "очень часто здесь там который где местный общий отчёт статья информация подробности обзор раздел "
    "страница заметка тема справочник известный каждый другой после перед малый большой",
    "el": "ο η το και του της με για σε ένα μια στο στη είναι αυτό αυτή από ως ήταν των κοντά επίσης μερικά "
    "πολλά νέο παλιό πολύ συχνά εδώ εκεί ποιο πού τοπικό γενικό αναφορά άρθρο πληροφορίες λεπτομέρειες "
    "επισκόπηση ενότητα σελίδα σημείωση θέμα οδηγός γνωστό κάθε άλλο μετά πριν μικρό μεγάλο",
    "zh": "的 了 和 在 是 有 这个 一些 关于 以及 也 很 那个 很多 新的 旧的 或者 附近 通常 经常 这里 那里 哪些 "
    "当地 一般 报告 文章 信息 详情 概述 章节 页面 注释 主题 指南 著名 每个 其他 之后 之前 小型 大型",
    "ar": "في من على و إلى عن مع هذا هذه كان ذلك التي الذي هو هي كانت بعد عند حول قرب أيضا بعض كثير جديد "
    "قديم جدا غالبا هنا هناك أين محلي عام تقرير مقال معلومات تفاصيل نظرة قسم صفحة ملاحظة موضوع دليل "
    "مشهور كل آخر قبل صغير كبير",
}

_QUESTION_WORDS: dict[str, str] = {
    "en": "what how where find show search explain which",
    "de": "was wie wo finde zeige suche erkläre welche",
    "fr": "quoi comment où trouver montrer chercher expliquer quel",
    "es": "qué cómo dónde buscar mostrar encontrar explicar cuál",
    "ru": "что как где найти показать искать объяснить какой",
    "el": "τι πώς πού βρες δείξε αναζήτηση εξήγησε ποιο",
    "zh": "什么 怎么 哪里 查找 显示 搜索 解释 哪个",
    "ar": "ما كيف أين ابحث اعرض اشرح أي ماذا",
}

_SENTENCE_END: dict[str, str] = {"zh": "。"}
_QUESTION_END: dict[str, str] = {"zh": "？", "ar": "؟"}


@dataclass(frozen=True)
class Lexicon:
    """Words of one language.

    ``concepts[c]`` holds the surface forms of concept ``c`` (primary first, then an optional synonym);
    concept ``c`` means the same in every language. ``joiner`` separates words ("" for Chinese).
    """

    language: str
    concepts: tuple[tuple[str, ...], ...]
    fillers: tuple[str, ...]
    question_words: tuple[str, ...]
    joiner: str
    sentence_end: str
    question_end: str


def _parse_concepts() -> list[list[tuple[str, ...]]]:
    """Parse the concept table into rows of per-language form tuples; raise on a malformed row."""
    rows: list[list[tuple[str, ...]]] = []
    for line_no, line in enumerate(_CONCEPT_TABLE.strip().splitlines(), start=1):
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) != len(LANGUAGES) or any(not cell for cell in cells):
            raise ValueError(f"lexicon concept table line {line_no}: expected {len(LANGUAGES)} cells, got {line!r}")
        row = [tuple(form.strip() for form in cell.split("/")) for cell in cells]
        for forms in row:
            if not 1 <= len(forms) <= 2 or any(not form or " " in form for form in forms):
                raise ValueError(f"lexicon concept table line {line_no}: bad cell {'/'.join(forms)!r}")
        rows.append(row)
    return rows


@lru_cache(maxsize=None)
def lexicon(language: str) -> Lexicon:
    """The :class:`Lexicon` of ``language`` (one of :data:`LANGUAGES`)."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; expected one of {LANGUAGES}")
    column = LANGUAGES.index(language)
    concepts = tuple(row[column] for row in _parse_concepts())
    surface = [form for forms in concepts for form in forms]
    duplicates = sorted({form for form in surface if surface.count(form) > 1})
    if duplicates:
        raise ValueError(f"lexicon {language}: a word names two concepts: {duplicates}")
    fillers = tuple(_FILLERS[language].split())
    clash = sorted(set(fillers) & set(surface))
    if clash or len(set(fillers)) != len(fillers):
        raise ValueError(f"lexicon {language}: fillers repeat or clash with concept words: {clash}")
    return Lexicon(
        language=language,
        concepts=concepts,
        fillers=fillers,
        question_words=tuple(_QUESTION_WORDS[language].split()),
        joiner="" if language == "zh" else " ",
        sentence_end=_SENTENCE_END.get(language, "."),
        question_end=_QUESTION_END.get(language, "?"),
    )


def num_concepts() -> int:
    """Number of concepts (rows of the concept table)."""
    return len(_parse_concepts())


def dictionary(source: str, target: str) -> dict[str, str]:
    """Word-by-word dictionary from ``source`` to ``target``: every surface form → the target's primary form."""
    src, tgt = lexicon(source), lexicon(target)
    return {form: tgt.concepts[c][0] for c, forms in enumerate(src.concepts) for form in forms}
